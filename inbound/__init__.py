"""inbound: an inbound mail pipeline with the semantics of Amazon SES email receiving.

Data flows one way: receive -> spool -> scan -> evaluate -> dispatch. The stages talk
through the value types of `inbound.core`.
"""

__version__ = "0.1.0"
