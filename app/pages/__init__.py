"""HTML pages: the routes, the new-run form and its fields."""
