"""Receives DICOM over the network and stores it durably; decides when a study is complete."""
