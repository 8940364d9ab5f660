"""The HTTP control plane (CONTRACT §6): the aiohttp app, its server and the alert consumer."""
