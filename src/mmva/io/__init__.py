"""Media decoding and storage URIs."""
