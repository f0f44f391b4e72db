"""The Open Inference Protocol's data, shared by the HTTP and gRPC fronts: request and response
schemas, tensors decoded to numpy and encoded back (JSON and binary), and the classification
extension's answer."""
