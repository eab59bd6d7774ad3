"""The live store page (``/``) and its event stream: placeholder, being written."""
