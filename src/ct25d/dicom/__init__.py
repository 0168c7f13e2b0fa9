"""DICOM reading: headers, pixels to Hounsfield units, and series to sorted volumes."""
