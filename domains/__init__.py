"""One subpackage per domain; each defines DOMAIN (see pipelines.domain.Domain)."""
