"""AWS fixtures: a real moto server over HTTP, resources provisioned like production."""
