// Swagger UI over the gateway's own /openapi.json. A file rather than an inline script, so the
// page's Content-Security-Policy can refuse inline scripts.
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("loading")?.remove();
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 1,
    defaultModelExpandDepth: 3,
    displayRequestDuration: true,
    filter: true,
    showExtensions: true,
    tryItOutEnabled: false,
    persistAuthorization: false,
    // The default sends the document to validator.swagger.io: nothing leaves this host.
    validatorUrl: null,
  });
});
