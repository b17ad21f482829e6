"""Eva's voice application server: Asterisk control, ARI app, media pipeline and the `eva` command."""

__version__ = "0.1.0"
