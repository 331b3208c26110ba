"""OpenMSIStream-style programs written as in OpenMSIStream's documentation; only the import lines differ."""
