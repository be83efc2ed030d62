"""The one exception the export CLI turns into a single line and a non-zero exit."""


class ExportError(Exception):
    """A problem the user can fix (bad path, unsupported model, parity off); the message says how."""
