"""mmva.train"""
