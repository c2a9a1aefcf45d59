"""collapsewatch web app: REST API, live stream, queue of runs and the workers that train them."""
