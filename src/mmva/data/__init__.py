"""mmva.data"""
