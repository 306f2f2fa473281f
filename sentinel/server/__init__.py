"""gRPC front end: grpclib on an asyncio loop in a worker thread, bridged to Trio."""
