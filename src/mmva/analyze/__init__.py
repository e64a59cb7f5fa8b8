"""mmva.analyze"""
