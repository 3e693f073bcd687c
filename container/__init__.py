"""Files the Docker image carries besides the package (see the Dockerfile)."""
