"""Pure functions: arrays and geometry in, arrays and numbers out. No database, network or Celery here."""
