"""Not yet registered: `domain.py` holds this domain's DOMAIN. Registering it here (`from domains.pathology.domain import DOMAIN`)
waits for lazy domain discovery, because importing its dependencies at every CLI start is too slow."""
