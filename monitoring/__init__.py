"""Operations helpers: Sentry setup, the health check CLI and the supervisord event listener."""
