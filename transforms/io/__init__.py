"""Reading inputs: storage (local and gs://), splitting big files into ranges, text formats, and the text and image readers."""
