"""The test harness: every helper the lanes share, one module per concept.

- ``fixtures_aws``: moto/LocalStack servers, provisioned worlds, ``AwsEnv`` (a pytest plugin);
  ``emulators``: LocalStack + dynalite processes; ``ports``: ``free_port``.
- ``fixtures_media`` (a pytest plugin) and ``media_tools``: real media, ffmpeg/ffprobe runs,
  decoding and tone analysis; ``media_checks``: a merged file checked by content;
  ``speech_media``: the speech corpus.
- ``worker_harness``: contacts and jobs seeded on a world, queue inspection (``queue_depth``),
  the one ``worker_env`` and ``WorkerProcess``, an in-process consumer; ``polling``: the one
  ``wait_until`` (and its async ``eventually``); ``logs``: captured JSON logs;
  ``mid_merge``: a worker process SIGTERMed while it merges, and what it must give back.
- ``hostile_support``, ``hostile_corpus`` (a pytest plugin), ``faultproxy``, ``soak``
  (``python -m tests.harness.soak``, ``make soak``): the hostile-input, fault and soak runs.
- ``http_server``: a range-serving HTTP server (browser tests); ``infra_helpers``: the
  template, the Dockerfile and other deploy files read as data.

Fixtures are defined in ``conftest.py`` files and the plugin modules ``tests/conftest.py``
loads; the code behind them lives here. A test module imports helpers from here, never from
another test module.
"""
