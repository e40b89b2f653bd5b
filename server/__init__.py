"""The service's processes wired together: `twossp serve` (the API plus, without a broker, the embedded
worker), `twossp keys` and `twossp download`. The only package that imports both `api` and `worker`."""
