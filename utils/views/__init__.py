"""What people read besides the charts: the HTML report and webhook notifications."""
