"""Plugins bundled with SBR. Each sub-package registers through the ``sbr`` entry point group."""
