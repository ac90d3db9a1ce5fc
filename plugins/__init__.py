"""The built-in plugins. Each module is one family, declared in the ``deltaprop``
entry-point group of this distribution, so it is discovered exactly as a
third-party plugin is."""
