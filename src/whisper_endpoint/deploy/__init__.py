"""Ways to run the server beyond one process: Ray Serve (`whisper_endpoint.deploy.ray`)."""
