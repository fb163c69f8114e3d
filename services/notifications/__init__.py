"""Notifications: WeChat subscribe messages, SMS and email, with consent, caps and quiet hours."""
