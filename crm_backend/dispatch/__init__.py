"""Dispatch (派单): categorise, locate and route every new case, with a working-day deadline."""
