"""mmva.serve"""
