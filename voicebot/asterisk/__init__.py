"""Asterisk under Eva's control: the chroot image, rendered configuration and the process itself."""
