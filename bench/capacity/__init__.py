"""Capacity model and scaling simulation (issue 17): `make capacity`, docs/capacity.md.

Small modules, one concept each: ``template`` (the scaling read from infra/template.yaml and a
parameter file), ``costmodel`` (job seconds fitted to `make bench` results), ``traffic`` (a
contact center's day), ``simulator`` (the discrete-event simulation of SQS, the workers and
autoscaling), ``pricing``, ``search`` (smallest MaxTasks meeting a p95), ``report``.
"""
