"""Code shared by the collector and the API: settings, record schema, MongoDB access, indexes."""
