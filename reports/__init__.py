"""Tells the result: DICOM SR, SEG and key image, the sender to PACS, worklist flags, cohort export."""
