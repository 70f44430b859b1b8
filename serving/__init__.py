"""tfmeta's serving side: an embedded server with TensorFlow Serving's REST and gRPC contract,
a client, and the configuration for the official tensorflow/serving image. No ML logic lives here:
the exported SavedModel adapts to each request by itself (`tfmeta.export`)."""
