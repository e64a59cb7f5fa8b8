"""mmva.cloud"""
