"""Performance benchmarks (issue 6): `make bench` / `python -m bench`.

The merge of this project is measured against the Lambda's five-pass sequence and against the
physical floor (stream-copy remux + the output's audio encode), in the same run, on cached
screen-like 720p H.264+AAC recordings. Results go to ``bench/results/``.
"""
