"""Reports: dashboard notes and plots saved into a study, rendered tables."""
