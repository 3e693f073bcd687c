"""Rule test files (`inbound test`, SPEC section 6): their model, loading and running."""
