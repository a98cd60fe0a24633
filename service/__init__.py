"""BentoML layer of lesionseg: services, API schemas, error mapping, model store."""
