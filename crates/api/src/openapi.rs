//! The OpenAPI 3 document, generated from the handlers' annotations.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::Problem;
use crate::routes::{ops, orders, subscriptions, tracking};

#[derive(OpenApi)]
#[openapi(
    info(title = "E-ComExpress pedidos API", description = "Validates orders and publishes versioned PedidoCreado / PedidoActualizado events to SNS; tracks them as the workers apply them."),
    paths(orders::create, orders::update, tracking::get_order, tracking::list_by_cliente, subscriptions::subscribe, subscriptions::status, ops::health, ops::status, ops::ready, ops::metrics),
    components(schemas(Problem, orders::Publicado, orders::CrearPedido, orders::ActualizarPedido, orders::ItemInput, tracking::Pedido, tracking::PedidoResumen, tracking::Linea, tracking::VersionAplicada, tracking::Envio, tracking::PaginaPedidos, subscriptions::Suscripcion, subscriptions::TipoEvento, subscriptions::EstadoSuscripcion, ops::Readiness)),
    tags((name = "pedidos"), (name = "suscripciones", description = "Admin only: ADMIN_TOKEN as a bearer token (or a console session)"), (name = "ops")),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

/// `adminBearer` (`ADMIN_TOKEN`, for the admin routes) and `apiKey` (`X-Api-Key`, for order writes when `API_KEYS`
/// is configured).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "adminBearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("ADMIN_TOKEN. The admin routes answer 404 while it is unset."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "One of API_KEYS. Required on order writes only when API_KEYS (or API_KEYS_FILE) is configured.",
            ))),
        );
    }
}
