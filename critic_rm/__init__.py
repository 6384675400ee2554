"""The `critic-rm` command: a dispatcher over the service's and the trainer's command lines."""
