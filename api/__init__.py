"""Public client side of the pilot-job manager: job model, errors, protocol, client API."""
