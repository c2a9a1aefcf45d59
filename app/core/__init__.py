"""Process-wide settings of the collapsewatch web app and its workers."""
