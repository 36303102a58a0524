"""The long-lived service: the daemon and its jobs, the HTTP app (health, metrics, one-click
unsubscribe, survey), the reports, and the studio for marketers."""
