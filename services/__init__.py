"""ecomserve serving: classifier, generator and gateway services over gRPC."""
