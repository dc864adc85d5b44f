"""First-party plugins of transcribe-gateway, installed as `gateway_plugins`.

Each is an ordinary plugin, registered through the `transcribe_gateway` entry-point group in
pyproject.toml exactly as a third-party plugin would be.
"""
