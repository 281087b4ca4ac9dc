"""Data and training shared by every planner: data sets (digits, synthetic, streamed ImageFolder), the shipped
digits reference model, the loss terms, the one trainer and evaluation. Imports only the compiler layer."""
