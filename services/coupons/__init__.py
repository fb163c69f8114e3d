"""Coupons: Coupon templates, rule-driven issuance, the wallet, redemption, expiry and ROI."""
