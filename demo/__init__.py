"""`make demo`: a believable synthetic shop (贝贝母婴旗舰店) fed through the public event API.

- ``demo.shop``: the pure, seeded generator (customers, six months of their events);
- ``demo.feed``: sets the merchant up over HTTP (coupons, loyalty, notifications, segmentation)
  and posts the events to ``POST /v1/events``;
- ``python -m demo``: the command line (``--start`` runs the embedded system as ``make run`` does).

Nothing here reaches into a service: the demo is a shop platform like any other, so what it
shows is what a real shop would see.
"""
