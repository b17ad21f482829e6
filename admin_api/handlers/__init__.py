"""Route handlers, one module per area; each exposes ``ApiRouter`` objects that ``admin_api.app`` mounts."""
