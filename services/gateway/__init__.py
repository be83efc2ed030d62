"""The gateway: the e-commerce API over gRPC and JSON, routing to the classifier and generator services."""
