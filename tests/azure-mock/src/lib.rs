//! Mocks of Azure Resource Manager and Entra ID token endpoints (being built).
